//! One error type for the whole crate: a single human-readable line that names the thing that went
//! wrong and, where possible, what to do about it. The CLI prints it and exits with code 2.

use std::fmt;
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub struct Error(String);

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(message: impl Into<String>) -> Self {
        // Keep errors on one line: multi-line causes (e.g. from serde) are folded.
        Error(message.into().replace('\n', " "))
    }

    /// An error about a file: "<path>: <problem>".
    pub fn file(path: &Path, problem: impl fmt::Display) -> Self {
        Error::new(format!("{}: {problem}", path.display()))
    }

    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// `bail!("...", args)` returns an `Error` from the current function.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::error::Error::new(format!($($arg)*))) };
}
