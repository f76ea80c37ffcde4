//! Writing output files atomically: a killed run never leaves a half-written file behind.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A file being written: bytes go to a temporary file in the same folder (`.<name>.partial-<pid>`),
/// which `commit` renames to the final name once complete. Dropped uncommitted, it is removed.
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    writer: Option<BufWriter<std::fs::File>>,
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<AtomicFile> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path.file_name().ok_or_else(|| Error::file(path, "not a file path"))?;
        let tmp = dir.join(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
        let file = std::fs::File::create(&tmp).map_err(|e| write_error(path, e))?;
        Ok(AtomicFile { path: path.to_path_buf(), tmp, writer: Some(BufWriter::new(file)) })
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let writer = self.writer.as_mut().expect("not committed");
        writer.write_all(bytes).map_err(|e| write_error(&self.path, e))
    }

    /// Flush to disk and give the file its final name.
    pub fn commit(mut self) -> Result<()> {
        let writer = self.writer.take().expect("not committed");
        let result = (|| {
            let file = writer.into_inner().map_err(|e| e.into_error())?;
            file.sync_data()?;
            std::fs::rename(&self.tmp, &self.path)
        })();
        result.map_err(|e| write_error(&self.path, e))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn write_error(path: &Path, e: std::io::Error) -> Error {
    Error::file(path, format!("cannot write ({e}); check that the folder exists and is writable"))
}

/// Write `bytes` to `path` via a temporary file in the same folder, renamed when complete.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(bytes)?;
    file.commit()
}

/// The folder named by `given`, created if missing; without one, a fresh folder
/// `<temp>/retina-<what>-<pid>` (never the current folder: running a program must not litter the
/// place it is run from). The caller names the folder on stdout.
pub fn output_folder(given: Option<&str>, what: &str) -> Result<PathBuf> {
    let folder = match given {
        Some(g) => PathBuf::from(g),
        None => std::env::temp_dir().join(format!("retina-{what}-{}", std::process::id())),
    };
    std::fs::create_dir_all(&folder).map_err(|e| Error::file(&folder, format!("cannot create the output folder ({e}); name a writable one")))?;
    Ok(folder)
}
