//! Several models in one `visualize` call: each into `<save-folder>/<name>/`, and a top-level
//! `index.html` linking their pages.

use std::path::Path;

use super::merge::html_escape;
use crate::error::{Error, Result};
use crate::output::write_atomic;

/// Marks the top-level page as retina's, so a later call may replace it.
const GENERATOR: &str = "<meta name=\"generator\" content=\"retina visualize: models\">";

/// A folder name for each model spec (a name, file, folder or URL): its last path component without
/// extension (`model.ckpt` is named after its folder), made safe for a path and unique; `member` adds
/// `_member<id>` for ensemble members.
pub fn folder_names(specs: &[(String, Option<i64>)]) -> Vec<String> {
    let mut names: Vec<String> = specs
        .iter()
        .map(|(spec, member)| {
            let trimmed = spec.trim_end_matches(['/', '\\']);
            let parts: Vec<&str> = trimmed.rsplit(['/', '\\']).collect();
            let last = parts.first().copied().unwrap_or("model");
            let stem = match last.rsplit_once('.') {
                Some((stem, ext)) if !stem.is_empty() && ext.len() <= 12 => stem,
                _ => last,
            };
            let base = if matches!(stem, "model" | "") { parts.get(1).copied().unwrap_or("model") } else { stem };
            let safe: String =
                base.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect();
            let safe = safe.trim_start_matches('.').to_string();
            let safe = if safe.is_empty() { "model".to_string() } else { safe };
            match member {
                Some(id) => format!("{safe}_member{id}"),
                None => safe,
            }
        })
        .collect();
    let original = names.clone();
    for (i, name) in names.iter_mut().enumerate() {
        if original.iter().filter(|n| *n == name).count() > 1 {
            *name = format!("{name}_{i}");
        }
    }
    names
}

/// Refuse before any work if the top-level page exists and is not retina's.
pub fn check_models_index(save_folder: &Path, overwrite: bool) -> Result<()> {
    let path = save_folder.join("index.html");
    match std::fs::read_to_string(&path) {
        Ok(text) if !overwrite && !text.contains(GENERATOR) => Err(Error::file(
            &path,
            "was not written by retina, and a call with several models writes its page here; pass --overwrite to replace it, or pick another --save-folder",
        )),
        _ => Ok(()),
    }
}

/// One line per model on the top-level page: (folder name, what it is).
pub fn write_models_index(save_folder: &Path, models: &[(String, String)]) -> Result<()> {
    let mut html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">{GENERATOR}<title>retina visualize</title>\n<style>body{{font-family:sans-serif;margin:1em 2em}}li{{margin:.3em 0}}</style></head><body>\n<h1>{} models</h1><ul>\n",
        models.len()
    );
    for (name, what) in models {
        let name = html_escape(name);
        html += &format!("<li><a href=\"{name}/index.html\">{name}</a> · {}</li>\n", html_escape(what));
    }
    html += "</ul></body></html>\n";
    write_atomic(&save_folder.join("index.html"), html.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_are_short_safe_and_unique() {
        let specs = |v: &[&str]| v.iter().map(|s| (s.to_string(), None)).collect::<Vec<_>>();
        assert_eq!(
            folder_names(&specs(&["demo", "../x/example_low_res/model.ckpt", "/a/unified/model.ckpt", "hoefling_2024_base_low_res"])),
            ["demo", "example_low_res", "unified", "hoefling_2024_base_low_res"]
        );
        assert_eq!(folder_names(&specs(&["a/m.ckpt", "b/m.ckpt"])), ["m_0", "m_1"]);
        assert_eq!(folder_names(&specs(&["https://h/x y.safetensors?"])), ["x_y"]);
        assert_eq!(folder_names(&[("ens/".into(), Some(0)), ("ens/".into(), Some(1))]), ["ens_member0", "ens_member1"]);
        assert_eq!(folder_names(&specs(&["..", "/"])), ["model_0", "model_1"]);
    }
}
