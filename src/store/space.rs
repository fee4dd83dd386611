//! The outbox's filesystem as it is: the reserve file, free space, and what
//! a failed SQLite call says about the disk (the decisions are `disk`'s).

use std::io;
use std::path::{Path, PathBuf};

use rusqlite::ErrorCode;

use super::disk::{Fault, Room};

/// Below this many bytes free, an I/O error is taken for a full disk:
/// SQLite reports some of those as I/O errors (growing the WAL index, for
/// one), not as `SQLITE_FULL`.
const NEARLY_FULL: u64 = 256 << 10;

/// The reserve file beside the outbox: `outbox.db` → `outbox.db.reserve`.
pub(crate) fn reserve_path(outbox: &Path) -> PathBuf {
    let mut p = outbox.as_os_str().to_owned();
    p.push(".reserve");
    PathBuf::from(p)
}

/// The directory the outbox lives in.
pub(crate) fn dir_of(outbox: &Path) -> &Path {
    match outbox.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Bytes free for outpost's user on the filesystem holding `dir`.
pub(crate) fn free_bytes(dir: &Path) -> Option<u64> {
    let v = nix::sys::statvfs::statvfs(dir).ok()?;
    (v.blocks_available() as u64).checked_mul(v.fragment_size() as u64)
}

/// Is the filesystem holding `dir` read-only? Mounted so, or made so by
/// an error: ext4 then refuses writes with `EROFS` while its mount flags
/// still say read-write (`emergency_ro`), so a file is tried as well.
pub(crate) fn read_only(dir: &Path) -> bool {
    let mounted_ro = nix::sys::statvfs::statvfs(dir)
        .map(|v| v.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
        .unwrap_or(false);
    if mounted_ro {
        return true;
    }
    let probe = dir.join(".outpost-write-probe");
    match std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            false
        }
        Err(e) => e.raw_os_error() == Some(libc::EROFS),
    }
}

/// Does the reserve file exist?
pub(crate) fn reserve_held(outbox: &Path) -> bool {
    reserve_path(outbox).exists()
}

/// Makes the reserve file with `bytes` allocated on disk (not a sparse
/// file: `posix_fallocate`, or zeros where that is not supported). A
/// reserve that cannot be made whole is removed again.
pub(crate) fn make_reserve(outbox: &Path, bytes: u64) -> io::Result<()> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let path = reserve_path(outbox);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    let len = libc::off_t::try_from(bytes).unwrap_or(libc::off_t::MAX);
    // SAFETY: a valid descriptor we own, and a length.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    let made = match rc {
        0 => Ok(()),
        libc::EOPNOTSUPP | libc::EINVAL => {
            let zeros = vec![0u8; 64 << 10];
            let mut left = bytes;
            let mut w = io::BufWriter::new(&file);
            let mut r = Ok(());
            while left > 0 {
                let n = usize::try_from(left.min(zeros.len() as u64)).unwrap_or(zeros.len());
                if let Err(e) = w.write_all(zeros.get(..n).unwrap_or(&zeros)) {
                    r = Err(e);
                    break;
                }
                left = left.saturating_sub(n as u64);
            }
            r.and_then(|()| w.flush()).and_then(|()| file.sync_all())
        }
        code => Err(io::Error::from_raw_os_error(code)),
    };
    if made.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    made
}

/// Deletes the reserve file; `Ok(false)` if there was none.
pub(crate) fn release_reserve(outbox: &Path) -> io::Result<bool> {
    match std::fs::remove_file(reserve_path(outbox)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Free space on the filesystem and in the file (`freelist` and `used`
/// from SQLite's page counts).
pub(crate) fn room(outbox: &Path, pages: Option<(u64, u64, u64)>) -> Room {
    let (freelist, used) = match pages {
        Some((page_size, page_count, free_pages)) => (
            free_pages.saturating_mul(page_size),
            page_count
                .saturating_sub(free_pages)
                .saturating_mul(page_size),
        ),
        None => (0, 0),
    };
    Room {
        free: free_bytes(dir_of(outbox)),
        freelist,
        used,
    }
}

/// What a failed SQLite call says about the disk under `outbox`.
pub(crate) fn classify(outbox: &Path, e: &rusqlite::Error) -> Fault {
    let Some(code) = e.sqlite_error_code() else {
        return Fault::Other;
    };
    let dir = dir_of(outbox);
    match code {
        ErrorCode::DiskFull => Fault::Full,
        ErrorCode::ReadOnly | ErrorCode::SystemIoFailure | ErrorCode::CannotOpen
            if read_only(dir) =>
        {
            Fault::ReadOnly
        }
        ErrorCode::SystemIoFailure | ErrorCode::CannotOpen
            if free_bytes(dir).is_some_and(|f| f < NEARLY_FULL) =>
        {
            Fault::Full
        }
        ErrorCode::SystemIoFailure => Fault::Io(e.to_string()),
        _ => Fault::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_reserve_is_allocated_whole_and_released_once() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = dir.path().join("outbox.db");
        make_reserve(&outbox, 1 << 20).unwrap();
        let meta = std::fs::metadata(reserve_path(&outbox)).unwrap();
        assert_eq!(meta.len(), 1 << 20);
        assert!(meta.blocks() * 512 >= 1 << 20, "allocated, not sparse");
        assert!(reserve_held(&outbox));
        assert!(release_reserve(&outbox).unwrap());
        assert!(!release_reserve(&outbox).unwrap());
        assert!(!reserve_held(&outbox));
    }

    #[test]
    fn room_counts_free_and_used_pages() {
        let dir = tempfile::tempdir().unwrap();
        let r = room(&dir.path().join("o.db"), Some((1024, 100, 30)));
        assert_eq!(r.freelist, 30 * 1024);
        assert_eq!(r.used, 70 * 1024);
        assert!(r.free.is_some());
    }
}
