//! Any bytes: the pickle reader returns a tree or an error, and walking the tree into JSON ends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use retina::formats::{checkpoint, pickle};

fuzz_target!(|data: &[u8]| {
    if let Ok(tree) = pickle::parse(data, "fuzz") {
        let _ = checkpoint::to_json(&tree, &tree.root, 0);
    }
});
