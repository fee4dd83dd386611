//! What outpost knows about its outbox from outside the file, for when the
//! file itself cannot be believed:
//!
//! - **the last queue seen** (`outbox.db.last`): the next record id and
//!   the queue length after a commit, rewritten about once a minute while
//!   they change and when outpost stops. An outbox that comes back with
//!   ids below that (a file emptied, replaced, or missing its WAL) lost
//!   what it had acknowledged, and that is said, not met with silence;
//! - **alarms** (`outbox.db.alarm-20261207T213000Z.txt`): a report a
//!   person reads, written when the outbox was found damaged or short. An
//!   alarm stays in `status`, the page and health telemetry for as long as
//!   its report exists: delete the report once read.

use std::io;
use std::path::{Path, PathBuf};

/// The queue as last seen after a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Last {
    pub next_id: i64,
    pub queued: u64,
}

/// An alarm about the outbox, from its report file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alarm {
    pub report: PathBuf,
    /// The report's first line.
    pub summary: String,
}

fn sibling(outbox: &Path, suffix: &str) -> PathBuf {
    let mut p = outbox.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

pub(crate) fn last_path(outbox: &Path) -> PathBuf {
    sibling(outbox, ".last")
}

pub(crate) fn read_last(outbox: &Path) -> Option<Last> {
    let text = std::fs::read_to_string(last_path(outbox)).ok()?;
    let mut last = Last::default();
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("next_id", v)) => last.next_id = v.trim().parse().ok()?,
            Some(("queued", v)) => last.queued = v.trim().parse().ok()?,
            _ => {}
        }
    }
    Some(last)
}

/// Replaces the file whole (a new file renamed over the old one: a crash
/// leaves one or the other).
pub(crate) fn write_last(outbox: &Path, last: Last) -> io::Result<()> {
    let path = last_path(outbox);
    let tmp = sibling(outbox, ".last.new");
    std::fs::write(
        &tmp,
        format!("next_id {}\nqueued {}\n", last.next_id, last.queued),
    )?;
    std::fs::rename(&tmp, &path)
}

/// Writes an alarm report beside the outbox and logs it as an ERROR (a
/// person must look). Returns the report's path.
pub(crate) fn raise(outbox: &Path, summary: &str, details: &str) -> PathBuf {
    let stamp = crate::units::utc_text(crate::clock::wall_ms() / 1000, "", "T", "");
    let report = sibling(outbox, &format!(".alarm-{stamp}Z.txt"));
    let text = format!(
        "{summary}\n\n{details}\n\nThis alarm shows in `outpost status` until this file is deleted.\n"
    );
    if let Err(e) = std::fs::write(&report, text) {
        tracing::warn!(path = %report.display(), error = %e, "cannot write the outbox alarm's report");
    }
    tracing::error!(report = %report.display(), "{summary}");
    report
}

/// The alarms whose reports exist, oldest first.
pub(crate) fn list(outbox: &Path) -> Vec<Alarm> {
    let dir = super::space::dir_of(outbox);
    let Some(name) = outbox.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    let prefix = format!("{name}.alarm-");
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".txt"))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
        .into_iter()
        .map(|report| Alarm {
            summary: std::fs::read_to_string(&report)
                .ok()
                .and_then(|t| t.lines().next().map(str::to_string))
                .unwrap_or_default(),
            report,
        })
        .collect()
}

/// The damaged file set aside, beside the outbox, with the same stamp as
/// its alarm: `outbox.db` → `outbox.db.damaged-20261207T213000Z` (its WAL
/// and shared-memory files go with it).
pub(crate) fn set_aside(outbox: &Path) -> io::Result<PathBuf> {
    let stamp = crate::units::utc_text(crate::clock::wall_ms() / 1000, "", "T", "");
    let aside = sibling(outbox, &format!(".damaged-{stamp}Z"));
    std::fs::rename(outbox, &aside)?;
    for suffix in ["-wal", "-shm"] {
        let from = sibling(outbox, suffix);
        if from.exists() {
            std::fs::rename(&from, sibling(&aside, suffix))?;
        }
    }
    Ok(aside)
}

/// A WAL that was deleted after a crash: the shared-memory index is still
/// there and says the WAL held frames, but the WAL is gone. (A clean close
/// removes both.) Returns the frames it held.
pub(crate) fn lost_wal(outbox: &Path) -> Option<u32> {
    let shm = std::fs::read(sibling(outbox, "-shm")).ok()?;
    if sibling(outbox, "-wal").exists() {
        return None;
    }
    // The WAL index header: mxFrame (frames in the WAL), a native-endian
    // u32 at byte 16; after its two copies, nBackfill (frames already
    // copied into the file) at byte 96.
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(
            shm.get(at..at.checked_add(4)?)?.try_into().ok()?,
        ))
    };
    let frames = word(16)?.saturating_sub(word(96)?);
    (frames > 0).then_some(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_queue_survives_a_rewrite_and_reads_back() {
        let dir = tempfile::tempdir().expect("dir");
        let outbox = dir.path().join("outbox.db");
        assert_eq!(read_last(&outbox), None);
        write_last(
            &outbox,
            Last {
                next_id: 42,
                queued: 7,
            },
        )
        .expect("write");
        write_last(
            &outbox,
            Last {
                next_id: 43,
                queued: 8,
            },
        )
        .expect("write");
        assert_eq!(
            read_last(&outbox),
            Some(Last {
                next_id: 43,
                queued: 8
            })
        );
        assert!(!dir.path().join("outbox.db.last.new").exists());
    }

    #[test]
    fn alarms_are_listed_while_their_reports_exist() {
        let dir = tempfile::tempdir().expect("dir");
        let outbox = dir.path().join("outbox.db");
        assert!(list(&outbox).is_empty());
        let report = raise(&outbox, "the outbox was damaged", "salvaged 3");
        let alarms = list(&outbox);
        assert_eq!(alarms.len(), 1);
        assert_eq!(alarms[0].summary, "the outbox was damaged");
        std::fs::remove_file(report).expect("remove");
        assert!(list(&outbox).is_empty());
    }

    #[test]
    fn a_damaged_file_is_set_aside_with_its_wal() {
        let dir = tempfile::tempdir().expect("dir");
        let outbox = dir.path().join("outbox.db");
        std::fs::write(&outbox, b"x").expect("db");
        std::fs::write(dir.path().join("outbox.db-wal"), b"w").expect("wal");
        let aside = set_aside(&outbox).expect("aside");
        assert!(!outbox.exists());
        assert!(aside.exists());
        assert!(sibling(&aside, "-wal").exists());
        assert!(aside
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("outbox.db.damaged-")));
    }

    #[test]
    fn a_wal_index_without_its_wal_means_the_wal_was_deleted() {
        let dir = tempfile::tempdir().expect("dir");
        let outbox = dir.path().join("outbox.db");
        let mut shm = vec![0u8; 32 << 10];
        shm[16..20].copy_from_slice(&12u32.to_ne_bytes());
        shm[96..100].copy_from_slice(&12u32.to_ne_bytes());
        std::fs::write(dir.path().join("outbox.db-shm"), &shm).expect("shm");
        assert_eq!(
            lost_wal(&outbox),
            None,
            "every frame was copied into the file"
        );
        shm[96..100].copy_from_slice(&5u32.to_ne_bytes());
        std::fs::write(dir.path().join("outbox.db-shm"), &shm).expect("shm");
        assert_eq!(lost_wal(&outbox), Some(7));
        std::fs::write(dir.path().join("outbox.db-wal"), b"").expect("wal");
        assert_eq!(lost_wal(&outbox), None, "the WAL is there");
    }
}
