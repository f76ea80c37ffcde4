//! Adding nodes to the arena and filling containers, under the depth and node-count caps.

use std::sync::Arc;

use super::machine::{Machine, Step};
use super::value::{Node, NodeId, Value};

impl Machine<'_> {
    pub(super) fn depth_of(&self, v: &Value) -> u32 {
        match v {
            Value::Node(id) => self.depths.get(*id).copied().unwrap_or(0),
            _ => 0,
        }
    }

    pub(super) fn new_node(&mut self, node: Node, depth: u32) -> Step<Value> {
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

    /// A list, tuple or set node holding `items`.
    pub(super) fn new_container(&mut self, empty: Node, items: Vec<Value>) -> Step<Value> {
        self.work.charge(items.len());
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
    pub(super) fn deepen(&mut self, target: NodeId, items: &[Value]) -> Step<()> {
        let deepest = items.iter().map(|v| self.depth_of(v)).max().unwrap_or(0);
        let depth = self.depths.get_mut(target).ok_or("bad node")?;
        *depth = (*depth).max(deepest.saturating_add(1));
        if *depth > self.limits.max_depth {
            return Err(format!("nested more than {} levels deep", self.limits.max_depth));
        }
        Ok(())
    }

    pub(super) fn append(&mut self, target: NodeId, items: Vec<Value>) -> Step<()> {
        self.work.charge(items.len());
        self.deepen(target, &items)?;
        match self.nodes.get_mut(target) {
            Some(Node::List(list)) => list.extend(items),
            Some(Node::Object(o)) => o.list_items.extend(items),
            _ => return Err("APPEND to something that is not a list".into()),
        }
        Ok(())
    }

    /// SETITEM(S): `items` alternates keys and values.
    pub(super) fn set_items(&mut self, target: NodeId, items: Vec<Value>) -> Step<()> {
        if !items.len().is_multiple_of(2) {
            return Err("SETITEMS with an odd number of values".into());
        }
        self.work.charge(items.len());
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

    pub(super) fn class_name(&self, v: &Value) -> Option<(Arc<str>, Arc<str>)> {
        match v {
            Value::Node(id) => match self.nodes.get(*id)? {
                Node::Class { module, name } => Some((module.clone(), name.clone())),
                _ => None,
            },
            _ => None,
        }
    }

    pub(super) fn tuple_items(&self, v: &Value) -> Option<Vec<Value>> {
        match v {
            Value::Node(id) => match self.nodes.get(*id)? {
                Node::Tuple(items) | Node::List(items) => {
                    self.work.charge(items.len());
                    Some(items.clone())
                }
                _ => None,
            },
            _ => None,
        }
    }
}
