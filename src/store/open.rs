//! Opening the outbox file on the disk a Pi has: one that may be full.

use std::path::Path;

use super::{db, disk, space, StoreError};

/// Opens the file on a disk that may be full: the reserve (see `disk`) is
/// released if that is what it takes, and made if it is missing and there
/// is room. A disk without room to spare starts as [`disk::Condition::Full`]:
/// the broker serves, old readings drain, new ones are refused.
pub(super) fn on_disk(
    path: &Path,
    sync: crate::config::Synchronous,
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
