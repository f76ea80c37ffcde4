//! Any bytes as a `.safetensors` file: the header check (what runs before any data is read) and the
//! full model parser return a value or an error, and agree: a file whose header check fails is never
//! parsed as a model.
#![no_main]

use libfuzzer_sys::fuzz_target;
use retina::formats::safetensors;

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    let header = safetensors::read_header(&mut std::io::Cursor::new(data), len);
    let checked = header.and_then(|h| safetensors::check_header(&h, len));
    let parsed = safetensors::parse(data, "fuzz");
    if checked.is_err() {
        assert!(parsed.is_err(), "the header check refused a file the parser accepts");
    }
    let _ = safetensors::parse_model(data, "fuzz");
});
