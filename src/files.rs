//! Files outpost keeps for itself in the state directory: written whole or
//! not at all (a power cut mid-write leaves the old file), and readable by
//! outpost's user alone, because they may hold credentials.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `contents` to `path` with mode 0600, atomically: a temporary file
/// beside it is written and fsynced, then renamed over `path`. The parent
/// directory is created when missing.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn written_whole_with_mode_0600_and_the_directory_made() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("credentials").join("tb.json");
        write_private(&path, b"one").expect("write");
        write_private(&path, b"two").expect("overwrite");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!path.with_extension("tmp").exists());
    }
}
