//! numpy scalars, dtypes and arrays as nnfabrik's `data_info` pickles them.

use super::machine::{Machine, Step};
use super::value::{non_negative, NdArray, Node, NodeId, Object, ObjectKind, Value};

impl Machine<'_> {
    /// `numpy.core.multiarray.scalar(dtype, bytes)` for plain little-endian numbers and bools.
    pub(super) fn numpy_scalar(&self, args: &[Value]) -> Option<Value> {
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

    /// BUILD on `_reconstruct(...)`: the array from its `__setstate__` tuple.
    pub(super) fn build_ndarray(&mut self, target: NodeId, state: Value) -> Step<()> {
        if let Some(array) = self.ndarray_from_state(&state) {
            self.nodes[target] = Node::NdArray(array);
            return Ok(());
        }
        // Not a layout we understand (object arrays...): keep it as an inert record.
        let depth = 1 + self.depth_of(&state);
        self.deepen(target, &[])?;
        let class =
            self.new_node(Node::Class { module: "numpy.core.multiarray".into(), name: "_reconstruct".into() }, 0)?;
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

    /// BUILD on `numpy.dtype(...)`: only the byte order matters here.
    pub(super) fn build_numpy_dtype(&mut self, target: NodeId, state: &Value) {
        // State: (version, byte order, subarray, names, fields, elsize, alignment, flags).
        let order = self.tuple_items(state).and_then(|items| match items.get(1) {
            Some(Value::Str(s)) => s.chars().next(),
            _ => None,
        });
        if let (Some(order), Some(Node::NumpyDtype(dtype))) = (order, self.nodes.get_mut(target)) {
            dtype.byte_order = order;
        }
    }
}
