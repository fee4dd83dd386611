//! Opening the outbox file on the disk a Pi has: one that may be full,
//! and a file that may be damaged or short of what it held.
//!
//! A file SQLite cannot open, or that fails `PRAGMA quick_check`, is set
//! aside with a timestamp in its name, a new outbox is made, every
//! readable row is salvaged into it in order (see `salvage`) and an alarm
//! is raised (see `alarm`). A file that opens but holds less than it did
//! (emptied, replaced, its WAL deleted after a crash) raises an alarm too.
//! Either way outpost starts and its broker serves.

use std::path::Path;

use super::alarm::{self, Last};
use super::{db, disk, salvage, space, StoreError};
use crate::config::Synchronous;

/// Opens the outbox, whatever state it is found in.
pub(super) fn open(
    path: &Path,
    sync: Synchronous,
    reserve: u64,
) -> Result<(db::Db, disk::Disk), StoreError> {
    // Before SQLite sees the files: opening rebuilds the WAL index.
    let wal_lost = alarm::lost_wal(path);
    let last = alarm::read_last(path);
    let checked = on_disk(path, sync, reserve).and_then(|(db, disk)| {
        match db.quick_check().map_err(|e| db::explain(path, e))? {
            None => Ok((db, disk)),
            Some(complaint) => Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                detail: complaint,
            }),
        }
    });
    let (db, disk) = match checked {
        Ok(opened) => {
            short(path, &opened.0, last, wal_lost);
            opened
        }
        Err(StoreError::Corrupt { detail, .. }) => damaged(path, sync, reserve, &detail, last)?,
        Err(e) => return Err(e),
    };
    Ok((db, disk))
}

/// A file that opened but lost what it held.
fn short(path: &Path, db: &db::Db, last: Option<Last>, wal_lost: Option<u32>) {
    let next_id = db.next_id().unwrap_or(0);
    if let Some(frames) = wal_lost {
        alarm::raise(
            path,
            &format!(
                "the outbox's WAL ({}-wal) was deleted after outpost stopped without closing it: \
                 the last commits before that stop are lost ({frames} pages not yet copied into the file)",
                path.display()
            ),
            &format!(
                "Readings acknowledged in those commits never reach the cloud.\n\
                 The outbox now holds ids below {next_id}{}.",
                last.filter(|l| l.next_id > next_id)
                    .map(|l| format!(
                        "; ids up to {} had been given out when it was last seen (about {} readings)",
                        l.next_id.saturating_sub(1),
                        l.next_id.saturating_sub(next_id)
                    ))
                    .unwrap_or_default()
            ),
        );
        return;
    }
    let Some(last) = last else { return };
    if last.queued > 0 && next_id < last.next_id {
        alarm::raise(
            path,
            &format!(
                "the outbox {} holds less than it did: {} readings were queued and ids up to {} given out, \
                 but the file now holds only ids below {next_id} (emptied, replaced, or its WAL deleted)",
                path.display(),
                last.queued,
                last.next_id.saturating_sub(1)
            ),
            "Readings acknowledged before that are lost, unless a copy of the file exists.",
        );
    }
}

/// A file SQLite cannot use: set aside, a new outbox, what can be read
/// salvaged into it.
fn damaged(
    path: &Path,
    sync: Synchronous,
    reserve: u64,
    detail: &str,
    last: Option<Last>,
) -> Result<(db::Db, disk::Disk), StoreError> {
    let started = std::time::Instant::now();
    let aside = alarm::set_aside(path).map_err(|e| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("{detail}; and it cannot be set aside: {e}"),
    })?;
    let (mut db, disk) = on_disk(path, sync, reserve)?;
    let s = salvage::salvage(&aside, &mut db);
    let lost = match (last, s.unreadable.is_some()) {
        (Some(l), _) => format!("about {}", l.queued.saturating_sub(s.rows)),
        (None, true) => "all".to_string(),
        (None, false) => "an unknown number".to_string(),
    };
    alarm::raise(
        path,
        &format!(
            "the outbox was damaged ({detail}): set aside as {}; {} queued readings salvaged into a new outbox, {lost} lost",
            aside.display(),
            s.rows
        ),
        &format!(
            "Salvaged in order, with their timestamps: {} readings and {} dead letters; \
             damage met in {} place(s){}; took {} ms.\n\
             The damaged file is kept for inspection (sqlite3 FILE .recover); delete it when done.",
            s.rows,
            s.dead_letters,
            s.damaged_places,
            s.unreadable
                .as_deref()
                .map(|u| format!(" (nothing could be read: {u})"))
                .unwrap_or_default(),
            started.elapsed().as_millis()
        ),
    );
    Ok((db, disk))
}

/// Opens the file on a disk that may be full: the reserve (see `disk`) is
/// released if that is what it takes, and made if it is missing and there
/// is room. A disk without room to spare starts as [`disk::Condition::Full`]:
/// the broker serves, old readings drain, new ones are refused.
fn on_disk(
    path: &Path,
    sync: Synchronous,
    reserve: u64,
) -> Result<(db::Db, disk::Disk), StoreError> {
    let now = crate::clock::mono_ms();
    let db = match db::Db::open(path, sync) {
        Err(StoreError::DiskFull { .. }) if space::reserve_held(path) => {
            if let Err(e) = space::release_reserve(path) {
                tracing::warn!(error = %e, "cannot release the outbox's reserved space");
            }
            tracing::warn!(
                path = %path.display(),
                "the disk holding the outbox is full: released the reserved space to open it; \
                 new readings are refused until there is room"
            );
            db::Db::open(path, sync)?
        }
        other => other?,
    };
    let held = space::reserve_held(path);
    let mut disk = disk::Disk::new(reserve, held || reserve == 0, now);
    if !held && reserve > 0 {
        let room = space::room(path, db.pages().ok());
        // Room for the reserve and a little more: take it (the margin
        // asked of a full disk before it counts as recovered is for
        // leaving that state, see `disk`).
        let fits = room
            .free
            .is_some_and(|f| f >= reserve.saturating_add(reserve / 4));
        if fits {
            match space::make_reserve(path, reserve) {
                Ok(()) => disk.reserve_made(),
                Err(e) => tracing::warn!(error = %e, "cannot reserve space beside the outbox"),
            }
        } else {
            disk.start_full(now);
            tracing::warn!(
                path = %path.display(),
                free_bytes = room.free,
                "the disk holding the outbox has too little room for store.disk_reserve: \
                 queued readings drain, new ones are refused until there is room"
            );
        }
    }
    Ok((db, disk))
}

#[cfg(test)]
mod tests {
    use crate::config::StoreConfig;
    use crate::record::{Record, RecordKind};
    use crate::store::Outbox;

    fn rec() -> Record {
        Record {
            id: 0,
            sink: "a".into(),
            device: "d".into(),
            kind: RecordKind::Telemetry,
            ts: 1,
            topic: "t".into(),
            payload: b"{}".to_vec(),
            ts_source: Default::default(),
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn a_file_that_is_not_a_database_is_set_aside_and_a_new_outbox_opens_with_an_alarm() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("o.db");
        std::fs::write(&path, vec![0x42u8; 8192]).expect("write");
        let (ob, w) = Outbox::open(path.clone(), &StoreConfig::default(), &["a".into()])
            .expect("opens all the same");
        rt().block_on(async {
            ob.append(vec![rec()]).await.expect("append");
        });
        let alarms = ob.alarms();
        assert_eq!(alarms.len(), 1, "{alarms:?}");
        assert!(alarms[0].summary.contains("damaged"), "{alarms:?}");
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("o.db.damaged-"))
            .collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(
            std::fs::read(aside[0].path()).expect("aside"),
            vec![0x42u8; 8192]
        );
        // Deleting the report clears the alarm.
        std::fs::remove_file(&alarms[0].report).expect("remove");
        assert!(ob.alarms().is_empty());
        drop(ob);
        w.join();
    }
}
