//! Any bytes as a `.ckpt`: the torch zip reader and the Lightning reader return a model or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use retina::formats::{checkpoint, torch::TorchFile};

fuzz_target!(|data: &[u8]| {
    if let Ok(mut file) = TorchFile::open(std::io::Cursor::new(data), "fuzz") {
        let root = file.pickle.root.clone();
        let _ = file.state_dict(&root);
        let _ = checkpoint::lightning_model(&mut file, "fuzz");
    }
});
