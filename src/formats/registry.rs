//! The pretrained models openretina 1.1.1 knows by name, with their URLs exactly as openretina lists
//! them (`_MODEL_NAME_TO_REMOTE_LOCATION` in `openretina/models/core_readout.py`), and the files of the
//! Hoefling et al. 2024 ensemble that openretina fetches from GIN
//! (`load_ensemble_model_from_remote` in `openretina/utils/nnfabrik_model_loading.py`).
//!
//! The Hugging Face URLs are `.../tree/main/...` web-page addresses, as in openretina (which hands the
//! part after `main/` to the Hugging Face client); [`RegistryEntry::download_url`] gives the address of
//! the file itself (`.../resolve/main/...`).

/// How a registered model is stored, so a caller can tell "retina cannot run this yet" before loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    /// A PyTorch Lightning `.ckpt` (a pickled dict inside a zip archive).
    LightningCheckpoint,
    /// A safetensors file (retina's own export format; no openretina 1.1.1 name points to one).
    Safetensors,
    /// A folder of nnfabrik files per ensemble member: `config_*.yaml`, `data_info_*.pkl`,
    /// `state_dict_*.pth.tar`.
    NnfabrikEnsemble,
}

impl ModelFormat {
    pub fn describe(self) -> &'static str {
        match self {
            ModelFormat::LightningCheckpoint => "Lightning checkpoint (.ckpt)",
            ModelFormat::Safetensors => "safetensors",
            ModelFormat::NnfabrikEnsemble => "nnfabrik ensemble folder (yaml + pkl + pth.tar)",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryEntry {
    /// The name given on the command line, e.g. `hoefling_2024_low_res`.
    pub name: &'static str,
    /// The URL as openretina lists it; for the ensemble, the GIN folder holding its files.
    pub url: &'static str,
    pub format: ModelFormat,
    /// One line for `--help` and error messages.
    pub description: &'static str,
}

impl RegistryEntry {
    /// The address to download the file from: Hugging Face page URLs (`/tree/` or `/blob/`) are turned
    /// into file URLs (`/resolve/`); other URLs are returned unchanged.
    pub fn download_url(&self) -> String {
        huggingface_file_url(self.url)
    }
}

/// `concat!` writes each URL as openretina does: the checkpoints base path + dated file.
macro_rules! checkpoint {
    ($name:expr, $file:expr, $description:expr) => {
        RegistryEntry {
            name: $name,
            url: concat!("https://huggingface.co/datasets/open-retina/open-retina/tree/main/model_checkpoints/", $file),
            format: ModelFormat::LightningCheckpoint,
            description: $description,
        }
    };
}

/// Every name openretina 1.1.1 resolves in `load_core_readout_from_remote`, in its order.
pub static PRETRAINED_MODELS: [RegistryEntry; 9] = [
    checkpoint!(
        "hoefling_2024_low_res",
        "2026-03-09/hoefling_2024_cnn_low_res.ckpt",
        "mouse RGCs, Hoefling et al. 2024, low-resolution CNN"
    ),
    checkpoint!(
        "hoefling_2024_high_res",
        "2026-03-09/hoefling_2024_cnn_high_res.ckpt",
        "mouse RGCs, Hoefling et al. 2024, high-resolution CNN"
    ),
    checkpoint!("karamanlis_2024_mouse", "2026-03-09/karamanlis_2024_mouse.ckpt", "mouse RGCs, Karamanlis et al. 2024"),
    checkpoint!(
        "karamanlis_2024_marmoset",
        "2026-03-09/karamanlis_2024_marmoset.ckpt",
        "marmoset RGCs, Karamanlis et al. 2024"
    ),
    checkpoint!(
        "maheswaranathan_2023",
        "2026-03-09/maheswaranathan_2023.ckpt",
        "salamander RGCs, Maheswaranathan et al. 2023"
    ),
    checkpoint!("sridhar_2025", "2026-03-09/sridhar_2025.ckpt", "marmoset RGCs, Sridhar et al. 2025"),
    checkpoint!("goldin_2022_axolotl", "2026-03-09/goldin_2022_axolotl.ckpt", "axolotl RGCs, Goldin et al. 2022"),
    checkpoint!("goldin_2022_mouse", "2026-03-09/goldin_2022_mouse.ckpt", "mouse RGCs, Goldin et al. 2022"),
    checkpoint!(
        "hoefling_2024_base_low_res",
        "27-11-2025/hoefling_2024_base_low_res.ckpt",
        "legacy model of the first bioRxiv version of Hoefling et al. 2024"
    ),
];

/// The 5-member ensemble of Hoefling et al. 2024. openretina has no name for it (its CLI uses
/// `--is-hoefling-ensemble-model`); `hoefling_2024_ensemble` is retina's name.
pub static HOEFLING_ENSEMBLE: RegistryEntry = RegistryEntry {
    name: "hoefling_2024_ensemble",
    url: "https://gin.g-node.org/eulerlab/rgc-natstim/raw/master/models/nonlinear/9d574ab9fcb85e8251639080c8d402b7",
    format: ModelFormat::NnfabrikEnsemble,
    description: "mouse RGCs, Hoefling et al. 2024, 5-member ensemble (15 files from GIN)",
};

macro_rules! ensemble_file {
    ($file:expr) => {
        concat!(
            "https://gin.g-node.org/eulerlab/rgc-natstim/raw/master/models/nonlinear/9d574ab9fcb85e8251639080c8d402b7/",
            $file
        )
    };
}

/// The ensemble's 15 files, in the order openretina downloads them: for each member (seed 00000 …
/// 04000) its config, data info and state dict.
pub static HOEFLING_ENSEMBLE_URLS: [&str; 15] = [
    ensemble_file!("config_00000.yaml"),
    ensemble_file!("data_info_00000.pkl"),
    ensemble_file!("state_dict_00000.pth.tar"),
    ensemble_file!("config_01000.yaml"),
    ensemble_file!("data_info_01000.pkl"),
    ensemble_file!("state_dict_01000.pth.tar"),
    ensemble_file!("config_02000.yaml"),
    ensemble_file!("data_info_02000.pkl"),
    ensemble_file!("state_dict_02000.pth.tar"),
    ensemble_file!("config_03000.yaml"),
    ensemble_file!("data_info_03000.pkl"),
    ensemble_file!("state_dict_03000.pth.tar"),
    ensemble_file!("config_04000.yaml"),
    ensemble_file!("data_info_04000.pkl"),
    ensemble_file!("state_dict_04000.pth.tar"),
];

/// The name retina handles itself without any file (see `download::resolve_model`).
pub const BUILT_IN_MODELS: [&str; 1] = ["demo"];

/// The registered model called `name` (the 9 openretina names and `hoefling_2024_ensemble`).
pub fn lookup(name: &str) -> Option<&'static RegistryEntry> {
    all_entries().find(|entry| entry.name == name)
}

/// Every registered entry: openretina's names, then the ensemble.
pub fn all_entries() -> impl Iterator<Item = &'static RegistryEntry> {
    PRETRAINED_MODELS.iter().chain(std::iter::once(&HOEFLING_ENSEMBLE))
}

/// All names a model can be given by, built-in ones first, for `--help` and error messages.
pub fn known_names() -> Vec<&'static str> {
    BUILT_IN_MODELS.iter().copied().chain(all_entries().map(|entry| entry.name)).collect()
}

/// "demo, hoefling_2024_low_res, ..." for error messages.
pub fn known_names_line() -> String {
    known_names().join(", ")
}

/// One line per registered model ("name  description  [format]") for `--help`.
pub fn help_text() -> String {
    let width = all_entries().map(|entry| entry.name.len()).max().unwrap_or(0);
    let mut lines = vec![format!("{:width$}  built-in demo model, no download", "demo")];
    for entry in all_entries() {
        lines.push(format!("{:width$}  {} [{}]", entry.name, entry.description, entry.format.describe()));
    }
    lines.join("\n")
}

/// The error text for a name that is neither registered nor built in.
pub fn unknown_name_message(name: &str) -> String {
    format!("unknown model name {name}; known names: {}", known_names_line())
}

/// Hugging Face page URLs (`https://huggingface.co/.../tree/main/x` or `/blob/main/x`) point to a web
/// page; the file itself is at `/resolve/main/x`. Other URLs are returned unchanged.
pub fn huggingface_file_url(url: &str) -> String {
    if let Some(rest) = url.strip_prefix("https://huggingface.co/") {
        for page in ["/tree/", "/blob/"] {
            if let Some((repo, file)) = rest.split_once(page) {
                return format!("https://huggingface.co/{repo}/resolve/{file}");
            }
        }
    }
    url.to_string()
}
