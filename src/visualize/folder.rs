//! The save folder's rules. Its hidden `.retina-visualize/` folder holds:
//! - `state.json`: the plan of the run that owns the folder (its fingerprint and every output it
//!   writes). Only files named there are ever removed; anything else in the folder is left alone, and a
//!   run that would overwrite such a file is refused unless `--overwrite`.
//! - `lock`: held briefly, while a run sets the folder up and while it finishes (merges).
//! - `running`: held shared by every run working in the folder. Shards of one run (same fingerprint)
//!   work side by side; a run with other settings needs it alone, so it is refused while they work.
//! - `meis/<i>.safetensors`: MEIs finished and not yet merged into `meis.safetensors`.
//! - `failed/<i>.txt`: MEIs that failed (their values left the finite numbers), with the one-line
//!   error. They are finished work too: a resumed run does not redo them (the same settings fail the
//!   same way), the merge marks them, and they go with the rest of the state when the settings change.

use std::collections::HashSet;
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

use super::plan::Plan;
use crate::error::{Error, Result};
use crate::output::write_atomic;

pub const STATE_DIR: &str = ".retina-visualize";
/// The state file of retina before `.retina-visualize/`: its folders are taken as retina's.
const LEGACY_STATE_FILE: &str = ".retina-visualize-state";

/// The save folder and its state.
pub struct Folder {
    pub root: PathBuf,
    state_dir: PathBuf,
}

/// A run's hold on the folder: the `running` lock, shared with the other shards of the same run.
pub struct Running {
    _running: File,
}

/// The folder's setup lock, held while it lives.
pub struct SetupLock {
    file: File,
}

impl Drop for SetupLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

impl Folder {
    pub fn new(root: &Path) -> Folder {
        Folder { root: root.to_path_buf(), state_dir: root.join(STATE_DIR) }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    /// Where MEI `i` of the plan is saved until the merge.
    pub fn record(&self, i: usize) -> PathBuf {
        self.state_dir.join("meis").join(format!("{i}.safetensors"))
    }

    /// Where the error of MEI `i`, if it failed, is kept (also after the merge).
    pub fn failure(&self, i: usize) -> PathBuf {
        self.state_dir.join("failed").join(format!("{i}.txt"))
    }

    /// The error of MEI `i`, if it failed.
    pub fn failed(&self, i: usize) -> Option<String> {
        std::fs::read_to_string(self.failure(i)).ok().map(|s| s.trim().to_string())
    }

    /// Mark MEI `i` as failed with `error`.
    pub fn mark_failed(&self, i: usize, error: &Error) -> Result<()> {
        let path = self.failure(i);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, format!("cannot create folder ({e})")))?;
        }
        write_atomic(&path, format!("{}\n", error.message()).as_bytes())
    }

    fn state_file(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }

    fn open_lock(&self, name: &str) -> Result<File> {
        let path = self.state_dir.join(name);
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::file(&path, format!("cannot open the folder's lock file ({e}); choose a writable --save-folder")))
    }

    /// Take the setup lock, waiting for another run's setup or merge to end.
    pub fn lock_setup(&self) -> Result<SetupLock> {
        let file = self.open_lock("lock")?;
        let path = self.state_dir.join("lock");
        file.lock().map_err(|e| Error::file(&path, format!("cannot lock ({e}); the file system must support file locks")))?;
        Ok(SetupLock { file })
    }

    /// The plan of the run that owns the folder, if any (an unreadable state counts as none).
    pub fn state(&self) -> Option<Plan> {
        let bytes = std::fs::read(self.state_file()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn has_state(&self) -> bool {
        self.state_file().is_file()
    }

    /// Set the folder up for `plan` and join the runs working in it. A folder that an earlier run with
    /// other settings filled loses that run's outputs (all of them: none may pass for the new run's);
    /// files retina did not write stay, and a run that would overwrite one is refused unless `overwrite`.
    pub fn begin(&self, plan: &Plan, overwrite: bool) -> Result<Running> {
        std::fs::create_dir_all(&self.root)
            .map_err(|e| Error::file(&self.root, format!("cannot create the save folder ({e}); choose a writable place")))?;
        let fresh = !self.state_dir.exists();
        std::fs::create_dir_all(self.state_dir.join("meis"))
            .map_err(|e| Error::file(&self.root, format!("cannot write into the save folder ({e}); choose a writable place")))?;
        let result = self.join(plan, overwrite);
        if result.is_err() && fresh {
            // A refused run leaves nothing behind.
            let _ = std::fs::remove_dir_all(&self.state_dir);
        }
        result
    }

    fn join(&self, plan: &Plan, overwrite: bool) -> Result<Running> {
        let _setup = self.lock_setup()?;
        let running_path = self.state_dir.join("running");
        let running = self.open_lock("running")?;
        let state = self.state();
        let same = state.as_ref().is_some_and(|s| s.fingerprint == plan.fingerprint);
        let alone = match running.try_lock() {
            Ok(()) => true,
            Err(TryLockError::WouldBlock) => false,
            Err(TryLockError::Error(e)) => {
                return Err(Error::file(&running_path, format!("cannot lock ({e}); the file system must support file locks")))
            }
        };
        if !alone {
            if !same || overwrite {
                return Err(Error::file(
                    &self.root,
                    format!(
                        "in use by another retina visualize run with other settings (lock {}); wait for it to finish, or pick another --save-folder",
                        running_path.display()
                    ),
                ));
            }
            running.lock_shared().map_err(|e| Error::file(&running_path, format!("cannot lock ({e})")))?;
            return Ok(Running { _running: running });
        }
        // Alone: nobody else writes here, so temporary files are leftovers of killed runs.
        let old_files: HashSet<String> = state.as_ref().map(|s| s.outputs().collect()).unwrap_or_default();
        self.remove_partial_files(plan, &old_files)?;
        if !same || overwrite {
            let legacy = self.root.join(LEGACY_STATE_FILE);
            if !overwrite && !legacy.is_file() {
                let mut foreign = plan.outputs().filter(|f| !old_files.contains(f) && self.path(f).exists());
                if let Some(first) = foreign.next() {
                    let more = foreign.count();
                    return Err(Error::file(
                        &self.root,
                        format!(
                            "holds {} that retina did not write where this run writes its outputs ({first}{}); pass --overwrite to replace them, or pick another --save-folder",
                            if more == 0 { "a file".to_string() } else { format!("{} files", more + 1) },
                            if more == 0 { String::new() } else { ", …".to_string() }
                        ),
                    ));
                }
            }
            // Every output of the earlier settings goes (also those this run makes again: they must be
            // redone); with --overwrite, also whatever sits where this run writes.
            let mut dirs = HashSet::new();
            let doomed = old_files.iter().cloned().chain(plan.outputs().filter(|_| overwrite));
            for f in doomed {
                let path = self.path(&f);
                remove_if_present(&path)?;
                if let Some(d) = path.parent() {
                    dirs.insert(d.to_path_buf());
                }
            }
            for i in 0..state.as_ref().map_or(0, |s| s.mei_count()).max(plan.mei_count()) {
                remove_if_present(&self.record(i))?;
                remove_if_present(&self.failure(i))?;
            }
            // Folders the old outputs leave empty go too (`remove_dir` keeps any that hold other files).
            let mut dirs: Vec<PathBuf> = dirs.into_iter().collect();
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for d in dirs {
                let mut d = d.as_path();
                while d != self.root && d.starts_with(&self.root) && std::fs::remove_dir(d).is_ok() {
                    d = d.parent().unwrap_or(&self.root);
                }
            }
            let json = serde_json::to_vec(plan).map_err(|e| Error::new(format!("cannot encode the folder state ({e})")))?;
            write_atomic(&self.state_file(), &json)?;
            remove_if_present(&legacy)?;
        }
        // All takers of `running` hold the setup lock, so nobody slips in between these two calls.
        running.unlock().map_err(|e| Error::file(&running_path, format!("cannot unlock ({e})")))?;
        running.lock_shared().map_err(|e| Error::file(&running_path, format!("cannot lock ({e})")))?;
        Ok(Running { _running: running })
    }

    /// Temporary files (`.<name>.partial-<pid>`, see `output::AtomicFile`) that killed runs left.
    fn remove_partial_files(&self, plan: &Plan, old_files: &HashSet<String>) -> Result<()> {
        let mut dirs: HashSet<PathBuf> = plan.outputs().chain(old_files.iter().cloned()).filter_map(|f| self.path(&f).parent().map(Path::to_path_buf)).collect();
        dirs.insert(self.root.clone());
        dirs.insert(self.state_dir.join("meis"));
        dirs.insert(self.state_dir.join("failed"));
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') && name.contains(".partial-") && entry.file_type().is_ok_and(|t| t.is_file()) {
                    remove_if_present(&entry.path())?;
                }
            }
        }
        Ok(())
    }
}

pub fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::file(path, format!("cannot remove the output of an earlier run ({e})")))
        }
        _ => Ok(()),
    }
}
