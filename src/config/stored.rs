//! The remote overlay's life in the state directory. Three files, each
//! written whole (0600, atomically):
//!
//! - `remote-config.json`: the **last good** overlay, the one a start uses;
//! - `remote-config.trying.json`: a change **being tried**. It becomes the
//!   last good one only once the part it changed ran (a changed sink:
//!   connected, and still connected `remote.rollback_after` later). A start
//!   that finds it uses it once and marks it so; if that start does not
//!   confirm it (it failed, crashed or was cut off), the next start sets
//!   it aside. So a change that stops outpost from starting costs one
//!   failed start, never a crash loop;
//! - `remote-config.failed.json`: the last change **set aside**, with why,
//!   reported as `config_status = rolled_back` until a later change holds.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::overlay::Overlay;
use crate::files::write_private;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trying {
    pub overlay: Overlay,
    /// A start has used it (and has not confirmed it yet).
    #[serde(default)]
    pub started: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failed {
    pub overlay: Overlay,
    pub error: String,
}

fn trying_path(state_dir: &Path) -> PathBuf {
    state_dir.join("remote-config.trying.json")
}

fn failed_path(state_dir: &Path) -> PathBuf {
    state_dir.join("remote-config.failed.json")
}

fn write<T: Serialize>(path: &Path, value: &T) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    write_private(path, text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<Result<T, String>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(serde_json::from_str(&text).map_err(|e| format!("{} is damaged: {e}", path.display())))
}

/// A change about to be tried (`started`: by this start).
pub fn save_trying(state_dir: &Path, overlay: &Overlay, started: bool) -> Result<(), String> {
    write(
        &trying_path(state_dir),
        &Trying {
            overlay: overlay.clone(),
            started,
        },
    )
}

/// The change being tried, if any (a damaged file reads as a failed one).
pub fn load_trying(state_dir: &Path) -> Option<Result<Trying, String>> {
    read(&trying_path(state_dir))
}

/// The change held: it becomes the last good overlay.
pub fn promote(state_dir: &Path, overlay: &Overlay) -> Result<(), String> {
    overlay.save(state_dir)?;
    let _ = std::fs::remove_file(trying_path(state_dir));
    let _ = std::fs::remove_file(failed_path(state_dir));
    Ok(())
}

/// The change did not hold: kept aside with why; the last good overlay
/// stays.
pub fn set_aside(state_dir: &Path, overlay: &Overlay, error: &str) -> Result<(), String> {
    write(
        &failed_path(state_dir),
        &Failed {
            overlay: overlay.clone(),
            error: error.to_string(),
        },
    )?;
    let _ = std::fs::remove_file(trying_path(state_dir));
    Ok(())
}

/// The last change set aside, if it has not been followed by one that held.
pub fn load_failed(state_dir: &Path) -> Option<Failed> {
    read(&failed_path(state_dir)).and_then(Result::ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_change_is_tried_then_promoted_or_set_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let change = Overlay {
            version: Some(json!(3)),
            sections: [("log_level".to_string(), json!("debug"))].into(),
        };
        assert!(load_trying(d).is_none());
        save_trying(d, &change, false).expect("save");
        assert_eq!(
            load_trying(d).map(|t| t.map(|t| t.started)),
            Some(Ok(false))
        );
        set_aside(d, &change, "it broke").expect("aside");
        assert!(load_trying(d).is_none());
        assert_eq!(load_failed(d).map(|f| f.error), Some("it broke".into()));
        assert_eq!(
            Overlay::load(d),
            Ok(Overlay::default()),
            "last good untouched"
        );

        save_trying(d, &change, true).expect("save");
        promote(d, &change).expect("promote");
        assert!(load_trying(d).is_none() && load_failed(d).is_none());
        assert_eq!(Overlay::load(d), Ok(change));
    }
}
