//! How much one pickle may make the reader build and copy, so hostile input stays bounded.

use std::cell::Cell;

use super::machine::Step;

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

/// Values copied so far (into containers, or out of argument tuples). An honest pickle spends at
/// least one byte per value it stores, so this stays below a few times the input length; a
/// hostile one that reuses a big memoised tuple over and over is stopped instead.
pub(super) struct CopyBudget {
    copied: Cell<u64>,
    allowed: u64,
}

impl CopyBudget {
    pub(super) fn for_input(input_len: usize) -> Self {
        CopyBudget { copied: Cell::new(0), allowed: 4 * input_len as u64 + 4096 }
    }

    pub(super) fn charge(&self, values: usize) {
        self.copied.set(self.copied.get().saturating_add(values as u64));
    }

    /// Checked after every opcode.
    pub(super) fn check(&self) -> Step<()> {
        if self.copied.get() > self.allowed {
            return Err("the pickle copies far more values than its size allows".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;

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
}
