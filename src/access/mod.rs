//! Who may connect to the local broker and what they may do, in the files
//! Mosquitto users already have: a [`passwd`] file as `mosquitto_passwd`
//! writes it and an [`acl`] file with Mosquitto's rules. The config checks
//! them (`check-config` names file, line and problem); the broker enforces
//! them, and SIGHUP reloads them.

pub mod acl;
pub mod cli;
pub mod passwd;

use std::path::{Path, PathBuf};

pub use acl::{Access, Acl, Who};
pub use passwd::{constant_time_eq, PasswordFile};

/// A problem in a password or ACL file, with where it is (line 0: the
/// file as a whole).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {problem}", path.display(), if *line > 0 { format!(":{line}") } else { String::new() })]
pub struct FileError {
    pub path: PathBuf,
    pub line: usize,
    pub problem: String,
}

/// The whole file, or an error naming it.
fn read(path: &Path) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(|e| FileError {
        path: path.to_path_buf(),
        line: 0,
        problem: format!("cannot read it: {e}"),
    })
}
