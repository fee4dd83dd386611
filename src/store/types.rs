//! The outbox's public types: its errors, and what it reports.

use std::path::PathBuf;

use super::db::Depth;
use super::disk::Condition;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error(
        "outbox {path} is not a SQLite database or is damaged ({detail}); \
         outpost sets such a file aside and starts a new outbox, but could not here",
        path = path.display()
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "cannot write the outbox {path} ({detail}); check that the directory exists, \
         is on a writable filesystem and belongs to the user outpost runs as",
        path = path.display()
    )]
    Unwritable { path: PathBuf, detail: String },
    #[error(
        "disk full writing the outbox {path}; records already stored are kept. \
         Free space on that filesystem or lower store.max_bytes",
        path = path.display()
    )]
    DiskFull { path: PathBuf },
    #[error(
        "the filesystem holding the outbox {path} is read-only (the kernel remounts \
         a filesystem so after an I/O error); new readings are refused, those stored \
         are kept, and outpost opens the outbox again by itself once it is writable",
        path = path.display()
    )]
    ReadOnly { path: PathBuf },
    #[error(
        "I/O error writing the outbox {path} ({detail}); new readings are refused, \
         outpost tries again every 2 s; check the disk (dmesg)",
        path = path.display()
    )]
    Io { path: PathBuf, detail: String },
    #[error("outbox {path}: {detail}", path = path.display())]
    Sqlite { path: PathBuf, detail: String },
    #[error("the outbox is closed (outpost is shutting down)")]
    Closed,
}

/// What became of an appended batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    /// Records now stored.
    pub stored: usize,
    /// Records refused because the outbox is full and the policy is `reject_new`
    /// (or a single record is larger than the whole outbox).
    pub rejected: usize,
}

/// Counters of one sink's queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Rows in the queue, as of the last commit; this includes
    /// [`QueueStats::delivered_undeleted`].
    pub depth: Depth,
    /// Records dropped by the bounds (size or age), since the outbox was
    /// created: accepted, then removed.
    pub dropped: u64,
    /// Records refused because the outbox was full (`reject_new`, or one
    /// record larger than the whole outbox): never accepted, never
    /// acknowledged, so never lost.
    pub refused: u64,
    /// Rows the platform acknowledged whose delete is not committed yet
    /// (deletes ride with the next commit, and are retried if one fails).
    pub delivered_undeleted: u64,
}

impl QueueStats {
    /// Records still waiting for their platform.
    pub fn waiting(&self) -> u64 {
        self.depth.records.saturating_sub(self.delivered_undeleted)
    }
}

/// Which dead letters an operator acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    One(i64),
    All,
}

/// What an operator does with dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadOp {
    /// Back into its sink's queue, at the end (after a config change made
    /// it sendable; if it still is not, it comes back with the reason).
    Retry,
    /// Gone for good.
    Purge,
}

/// What a retry or purge did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadDone {
    /// Records requeued or purged.
    pub done: usize,
    /// Dead letters left where they are: `(id, sink)` of sinks that are no
    /// longer configured (a retry only).
    pub kept: Vec<(i64, String)>,
}

/// The outbox's filesystem as the writer last found it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskView {
    pub condition: Condition,
    /// The error behind the condition, where there is one.
    pub detail: Option<String>,
    /// outpost's clock ([`crate::clock::mono_ms`]) when it began.
    pub since_ms: i64,
    /// The reserve file (`store.disk_reserve`) is in place.
    pub reserve_held: bool,
    pub reserve_bytes: u64,
}

/// The dead letters, as of the last commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeadStats {
    pub count: u64,
    pub bytes: u64,
    /// Dead letters removed to stay within `dead_letters_max_bytes`.
    pub dropped: u64,
}
