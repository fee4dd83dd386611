//! What is wrong with a config, located by its key path.

use std::fmt;
use std::path::PathBuf;

/// One thing wrong with a config file, located by its key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Collects problems: `problems.add("sink.up.url", "must start with ...")`.
pub trait Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>);
}

impl Problems for Vec<Problem> {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {count} problem(s):\n{list}", count = problems.len(), list = list(problems))]
    Invalid {
        origin: String,
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}
