//! What the outbox's filesystem allows, decided without touching it: state
//! without I/O, time passed in (outpost's clock, ms).
//!
//! Invariants:
//! - **Deletes always have room.** A file of `store.disk_reserve` bytes
//!   (see `space`) holds space back while all is well. The first commit
//!   that fails for a full disk releases it, and from then on
//!   ([`Condition::Full`]) new readings are stored only where they take no
//!   new space on the filesystem: into pages the outbox itself freed
//!   (SQLite reuses its free pages before it grows the file). Deletes of
//!   delivered readings, checkpoints and the writer's bookkeeping get the
//!   released space, so a drain always finishes.
//! - **The reserve comes back.** Once the filesystem has twice the reserve
//!   free again, the reserve is taken back and the outbox is
//!   [`Condition::Ok`]. When a drain has emptied most of the file, the
//!   writer compacts it (`VACUUM`) to give that space back; [`Disk::compact`]
//!   says when that fits.
//! - **Read-only and failing filesystems are retried.** New readings are
//!   refused without touching the disk, and every [`PROBE_MS`] the writer
//!   opens the outbox again (a filesystem remounted read-write, or mounted
//!   again after `fsck`, is a new file underneath the old descriptors) and
//!   tries the commit that failed.

/// How often a read-only or failing outbox is tried again.
pub(crate) const PROBE_MS: i64 = 2_000;

/// A failed compaction (not enough room yet) is tried again after this.
const COMPACT_AGAIN_MS: i64 = 30_000;

/// What is wrong with the outbox's filesystem, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Condition {
    #[default]
    Ok,
    /// No space: new readings only into the outbox's own free pages.
    Full,
    /// The filesystem is read-only (an I/O error made the kernel remount
    /// it so, or someone did).
    ReadOnly,
    /// Writes fail with an I/O error.
    Failing,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Ok => "ok",
            Condition::Full => "disk full",
            Condition::ReadOnly => "read-only filesystem",
            Condition::Failing => "I/O errors",
        }
    }
}

/// Why a commit failed, as far as the disk is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fault {
    Full,
    ReadOnly,
    Io(String),
    /// Not the disk's doing (a bug, a damaged file): nothing to change.
    Other,
}

/// What the writer does after a failed commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Response {
    /// Delete the reserve file now.
    pub release_reserve: bool,
    /// Commit the same group again at once without its new readings (they
    /// are refused): the deletes, dead letters and releases in it must not
    /// wait for readings that cannot be stored.
    pub retry_without_appends: bool,
}

/// Room on the filesystem and inside the outbox file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Room {
    /// Bytes free on the filesystem for outpost's user (`None`: unknown).
    pub free: Option<u64>,
    /// Bytes of pages the outbox file holds free (SQLite's freelist).
    pub freelist: u64,
    /// Bytes of pages in use in the outbox file.
    pub used: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Disk {
    condition: Condition,
    detail: Option<String>,
    /// outpost's clock when the condition began.
    since: i64,
    /// `store.disk_reserve`.
    reserve: u64,
    /// The reserve file is in place.
    held: bool,
    /// No probe (reopen, retry) before this.
    next_probe: i64,
    /// No compaction before this.
    next_compact: i64,
}

impl Disk {
    pub(crate) fn new(reserve: u64, held: bool, now: i64) -> Disk {
        Disk {
            condition: Condition::Ok,
            detail: None,
            since: now,
            reserve,
            held,
            next_probe: now,
            next_compact: now,
        }
    }

    pub(crate) fn condition(&self) -> Condition {
        self.condition
    }

    pub(crate) fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    pub(crate) fn since(&self) -> i64 {
        self.since
    }

    pub(crate) fn reserve_held(&self) -> bool {
        self.held
    }

    /// The outbox started on a filesystem without room to spare.
    pub(crate) fn start_full(&mut self, now: i64) {
        self.enter(
            Condition::Full,
            Some("no space left when outpost started".into()),
            now,
        );
    }

    fn enter(&mut self, c: Condition, detail: Option<String>, now: i64) {
        if self.condition != c {
            self.since = now;
        }
        self.condition = c;
        self.detail = detail;
        self.next_probe = now.saturating_add(PROBE_MS);
    }

    /// A commit failed; `had_appends` says whether new readings were in it.
    pub(crate) fn failed(&mut self, fault: Fault, had_appends: bool, now: i64) -> Response {
        match fault {
            Fault::Full => {
                let release = self.held;
                self.held = false;
                self.enter(
                    Condition::Full,
                    Some("no space left on the filesystem".into()),
                    now,
                );
                Response {
                    release_reserve: release,
                    retry_without_appends: had_appends,
                }
            }
            Fault::ReadOnly => {
                self.enter(Condition::ReadOnly, None, now);
                Response {
                    release_reserve: false,
                    retry_without_appends: false,
                }
            }
            // A read-only filesystem fails many ways; it stays that.
            Fault::Io(_) if self.condition == Condition::ReadOnly => {
                self.next_probe = self.next_probe.max(now);
                Response::default()
            }
            Fault::Io(detail) => {
                self.enter(Condition::Failing, Some(detail), now);
                Response::default()
            }
            Fault::Other => Response::default(),
        }
    }

    /// A commit worked; `wrote` says whether it changed anything (one that
    /// changed nothing proves nothing about the disk). A read-only or
    /// failing disk works again (a full one stays full until
    /// [`Disk::restore`]). Returns the condition left.
    pub(crate) fn committed(&mut self, wrote: bool, now: i64) -> Option<Condition> {
        match self.condition {
            Condition::ReadOnly | Condition::Failing if wrote => {
                let was = self.condition;
                self.condition = Condition::Ok;
                self.detail = None;
                self.since = now;
                Some(was)
            }
            _ => None,
        }
    }

    /// May a group with `bytes` of new readings be tried? Refusing without
    /// trying keeps a full disk's last space for deletes and a broken disk
    /// from being hammered.
    pub(crate) fn admits(&self, bytes: u64, room: Room) -> bool {
        match self.condition {
            Condition::Ok => true,
            // Only into pages the outbox freed, keeping a reserve's worth
            // of them for the WAL the deletes need (or the filesystem has
            // room again).
            Condition::Full => {
                room.free
                    .is_some_and(|f| f >= self.reserve.saturating_mul(2))
                    || room.freelist >= self.reserve.saturating_add(bytes)
            }
            Condition::ReadOnly | Condition::Failing => false,
        }
    }

    /// Is it time to open the outbox again and retry (read-only, failing)?
    pub(crate) fn probe_due(&mut self, now: i64) -> bool {
        match self.condition {
            Condition::ReadOnly | Condition::Failing if now >= self.next_probe => {
                self.next_probe = now.saturating_add(PROBE_MS);
                true
            }
            _ => false,
        }
    }

    /// Should the file be compacted now, to give a drained outbox's space
    /// back? Only on a full disk, when most of the file is free pages and
    /// the pages in use fit twice into the space free (the copy goes
    /// through the WAL).
    pub(crate) fn compact(&mut self, room: Room, now: i64) -> bool {
        let due = self.condition == Condition::Full
            && now >= self.next_compact
            && room.freelist >= self.reserve
            && room.freelist >= room.used
            && room.free.is_some_and(|f| room.used.saturating_mul(2) <= f);
        if due {
            self.next_compact = now.saturating_add(COMPACT_AGAIN_MS);
        }
        due
    }

    /// Space came back: take the reserve back (the caller makes the file
    /// when this says so) and leave [`Condition::Full`].
    pub(crate) fn restore(&mut self, room: Room, now: i64) -> bool {
        let roomy = room
            .free
            .is_some_and(|f| f >= self.reserve.saturating_mul(2));
        if !roomy {
            return false;
        }
        if self.condition == Condition::Full {
            self.condition = Condition::Ok;
            self.detail = None;
            self.since = now;
        }
        let make = !self.held && self.reserve > 0;
        self.held = true;
        make
    }

    /// The reserve file was made.
    pub(crate) fn reserve_made(&mut self) {
        self.held = true;
    }

    /// The reserve file could not be made (the caller says why in the log).
    pub(crate) fn reserve_missing(&mut self) {
        self.held = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn room(free: u64, freelist: u64, used: u64) -> Room {
        Room {
            free: Some(free),
            freelist,
            used,
        }
    }

    #[test]
    fn the_first_full_commit_releases_the_reserve_and_retries_the_deletes() {
        let mut d = Disk::new(8 * MB, true, 0);
        let r = d.failed(Fault::Full, true, 10);
        assert!(r.release_reserve);
        assert!(r.retry_without_appends);
        assert_eq!(d.condition(), Condition::Full);
        assert!(!d.reserve_held());
        // A second failure has nothing left to release.
        let r = d.failed(Fault::Full, false, 20);
        assert!(!r.release_reserve);
        assert!(!r.retry_without_appends);
        assert_eq!(d.since(), 10);
    }

    #[test]
    fn a_full_disk_stores_new_readings_only_in_pages_the_outbox_freed() {
        let mut d = Disk::new(8 * MB, true, 0);
        d.failed(Fault::Full, true, 0);
        // The released reserve is for the deletes.
        assert!(!d.admits(1000, room(8 * MB, 0, 50 * MB)));
        // The drain freed pages inside the file: readings fit there.
        assert!(d.admits(1000, room(8 * MB, 9 * MB, 41 * MB)));
        // But not the last reserve's worth of them.
        assert!(!d.admits(2 * MB, room(8 * MB, 9 * MB, 41 * MB)));
        // Space came back on the filesystem.
        assert!(d.admits(1000, room(16 * MB, 0, 50 * MB)));
    }

    #[test]
    fn space_coming_back_takes_the_reserve_back_once() {
        let mut d = Disk::new(8 * MB, true, 0);
        d.failed(Fault::Full, true, 0);
        assert!(!d.restore(room(15 * MB, 0, 0), 5));
        assert_eq!(d.condition(), Condition::Full);
        assert!(d.restore(room(16 * MB, 0, 0), 6));
        assert_eq!(d.condition(), Condition::Ok);
        assert!(d.reserve_held());
        assert!(!d.restore(room(16 * MB, 0, 0), 7), "already held");
    }

    #[test]
    fn a_drained_file_is_compacted_when_the_copy_fits_and_not_again_at_once() {
        let mut d = Disk::new(8 * MB, true, 0);
        assert!(!d.compact(room(8 * MB, 50 * MB, MB), 0), "not full");
        d.failed(Fault::Full, true, 0);
        assert!(
            !d.compact(room(8 * MB, 20 * MB, 30 * MB), 1),
            "mostly in use"
        );
        assert!(
            !d.compact(room(MB, 50 * MB, MB), 1),
            "the copy does not fit"
        );
        assert!(d.compact(room(8 * MB, 50 * MB, MB), 1));
        assert!(
            !d.compact(room(8 * MB, 50 * MB, MB), 2),
            "tried a moment ago"
        );
        assert!(d.compact(room(8 * MB, 50 * MB, MB), 1 + COMPACT_AGAIN_MS));
    }

    #[test]
    fn a_read_only_filesystem_refuses_without_trying_and_is_probed_every_two_seconds() {
        let mut d = Disk::new(8 * MB, true, 0);
        let r = d.failed(Fault::ReadOnly, true, 100);
        assert_eq!(
            r,
            Response::default(),
            "the reserve stays: it is not space that is missing"
        );
        assert_eq!(d.condition(), Condition::ReadOnly);
        assert!(!d.admits(1, room(100 * MB, 0, 0)));
        assert!(!d.probe_due(100 + PROBE_MS - 1));
        assert!(d.probe_due(100 + PROBE_MS));
        assert!(!d.probe_due(100 + PROBE_MS + 1));
        assert_eq!(
            d.committed(false, 4000),
            None,
            "a commit that wrote nothing"
        );
        assert_eq!(d.condition(), Condition::ReadOnly);
        // An I/O error on a read-only filesystem is still that.
        d.failed(Fault::Io("disk I/O error".into()), false, 4500);
        assert_eq!(d.condition(), Condition::ReadOnly);
        assert_eq!(d.committed(true, 5000), Some(Condition::ReadOnly));
        assert_eq!(d.condition(), Condition::Ok);
        assert!(d.admits(1, room(0, 0, 0)));
    }

    #[test]
    fn io_errors_keep_their_detail_until_a_commit_works() {
        let mut d = Disk::new(0, false, 0);
        d.failed(Fault::Io("disk I/O error".into()), true, 1);
        assert_eq!(d.condition(), Condition::Failing);
        assert_eq!(d.detail(), Some("disk I/O error"));
        assert_eq!(d.committed(true, 2), Some(Condition::Failing));
        assert_eq!(d.detail(), None);
        assert_eq!(d.committed(true, 3), None);
    }

    #[test]
    fn other_failures_change_nothing() {
        let mut d = Disk::new(MB, true, 0);
        assert_eq!(d.failed(Fault::Other, true, 1), Response::default());
        assert_eq!(d.condition(), Condition::Ok);
        assert!(d.reserve_held());
    }
}
