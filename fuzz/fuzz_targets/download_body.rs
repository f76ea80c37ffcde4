//! Any bytes as a finished download: the body check for each kind of file name returns Ok or an
//! error, never panics, and refuses web pages whatever the name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use retina::formats::integrity;

const NAMES: [&str; 6] = ["model.ckpt", "state_dict_00000.pth.tar", "model.safetensors", "data_info_00000.pkl", "config_00000.yaml", "file.bin"];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else { return };
    let name = NAMES[pick as usize % NAMES.len()];
    let result = integrity::check_body(name, &mut std::io::Cursor::new(body), body.len() as u64);
    if body.starts_with(b"<!DOCTYPE html") || body.starts_with(b"<html") {
        assert!(result.is_err());
    }
});
