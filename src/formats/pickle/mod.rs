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
//!
//! The reader is split by what each part decides:
//! - `value`: the value tree a pickle becomes ([`Pickle`], [`Value`], [`Node`]...);
//! - `machine`: the opcode loop, the stack and the memo;
//! - `arena`: adding nodes to the arena under the depth and count caps;
//! - `allow_list`: which globals a model file may name, and the refusal when it names another;
//! - `objects`: what `REDUCE`, `NEWOBJ` and `BUILD` make (inert records, or an interpreted callable);
//! - `torch_storage` and `numpy`: the torch and numpy callables that are interpreted;
//! - `budget`: the caps ([`Limits`]) and the budget on copied values.

mod allow_list;
mod arena;
mod budget;
mod machine;
mod numpy;
mod objects;
mod torch_storage;
mod value;

pub use allow_list::is_allowed_global;
pub use budget::Limits;
pub use value::{
    NdArray, Node, NodeId, NumpyDtype, Object, ObjectKind, Pickle, StorageDtype, StorageRef, TensorRef, Value,
};

use crate::error::{Error, Result};
use machine::Machine;

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
            return allow_list::refusal(what, record, global);
        }
        let what = match record {
            Some(record) => format!("{what}: {record}"),
            None => what.to_string(),
        };
        Error::new(format!("{what}: not a readable pickle: {problem} (at byte {})", machine.op_start))
    })
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
    fn self_referencing_list_is_bounded() {
        // l = []; l.append(l) -- a cycle. Parsing must finish; walkers guard their own depth.
        let bytes = b"\x80\x02]q\x00h\x00a.";
        let p = parse(bytes, "test").unwrap();
        assert!(p.sequence(&p.root).is_some());
    }
}
