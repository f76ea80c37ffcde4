//! What `REDUCE`, `NEWOBJ` and `BUILD` make: inert object records, except for the few callables
//! whose meaning is fixed and that model files need (torch tensors, `OrderedDict`, numpy values).

use super::machine::{Machine, Step};
use super::value::{Node, NodeId, NumpyDtype, Object, ObjectKind, Value};

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

impl Machine<'_> {
    pub(super) fn new_object(&mut self, callable: Value, args: Value, kwargs: Option<Value>) -> Step<Value> {
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
    pub(super) fn new_ordered_dict(&mut self, args: &Value) -> Step<Value> {
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
    pub(super) fn reduce(&mut self, callable: Value, args: Value) -> Step<Value> {
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

    /// BUILD: give an inert object its state; finish numpy arrays and dtypes (see `numpy`).
    pub(super) fn build(&mut self, target: NodeId, state: Value) -> Step<()> {
        match self.nodes.get(target) {
            Some(Node::NdArrayPending) => self.build_ndarray(target, state),
            Some(Node::NumpyDtype(_)) => {
                self.build_numpy_dtype(target, &state);
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
}
