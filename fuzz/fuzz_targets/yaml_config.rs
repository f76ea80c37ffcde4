//! Any text as an ensemble config: the YAML reader returns JSON or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use retina::formats::checkpoint;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = checkpoint::yaml_to_json(text);
    }
});
